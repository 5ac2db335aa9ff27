"""ReplayForge: a fault-tolerant queue for loss-tolerant data."""
