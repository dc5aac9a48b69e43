"""One module per paper's method, named after the method."""
