"""Mixtures and synthetic sources.

* `synthetic`: synthetic skill sources (addition, copy, small edits) as documents.
* `recipe`: the YAML mixture recipe and its schedule (constant, stages, linear).
* `blend`: integer sample counts and the training-order index (NumPy + one compiled loop).
* `mixture`: build a mixture directory from a recipe; read it back by position.
"""
