"""Service layer: the rules of the product, independent of HTTP and CLI."""
