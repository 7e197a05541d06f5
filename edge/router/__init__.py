"""The geo router: send each client to the nearest healthy edge that owns the id."""
