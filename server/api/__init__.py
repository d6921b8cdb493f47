"""HTTP layer: thin routes over `server.services`."""
