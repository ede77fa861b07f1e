"""albef_struct: ALBEF-style vision-language pretraining with latent-structure losses."""

__version__ = "0.1.0"
