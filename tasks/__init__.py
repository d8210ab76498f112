"""tasks layer (see README, Architecture)."""
