"""Admin views of cluster state land here with the API; there are no models to register."""
