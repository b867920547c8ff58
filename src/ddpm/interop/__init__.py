"""Interoperability with other DDPM tools (diffusers)."""
