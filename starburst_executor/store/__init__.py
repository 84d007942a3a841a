"""Object stores: the interface, its S3 implementation and the embedded local server."""
