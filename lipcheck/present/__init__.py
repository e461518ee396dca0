"""Presenting reports: `render` looks up the renderer of a format; `tables` (rich), `markdown`, `ci`
(JUnit, GitHub annotations), `html` (with `charts`) and `inspection` render; `facts` holds the figures
and phrases they share, so that no renderer imports another."""
