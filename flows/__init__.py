"""flows layer (see README, Architecture)."""
