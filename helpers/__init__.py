"""Image captioning helpers shared by the notebooks, the command line and the tests."""
