"""Use cases, one per module. Each returns a frozen result and never prints."""
