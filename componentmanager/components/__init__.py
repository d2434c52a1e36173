"""Built-in component types; importing this package registers them."""
