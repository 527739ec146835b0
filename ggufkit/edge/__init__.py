"""Edge devices: profiles and the memory model."""
