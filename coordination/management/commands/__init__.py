"""Django management commands for running and inspecting raftsync nodes."""
