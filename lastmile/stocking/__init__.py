"""Stocking: what each community front warehouse should order, and how a plan fares on true demand."""
