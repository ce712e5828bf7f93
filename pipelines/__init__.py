"""Engine wiring: each module is one engine's job over the domain logic in ``lastmile``."""
