"""Builders of test and benchmark models (tiny random-init models of the real LALM classes).

Not under ``tests/``: ``auralens bench`` builds a model of a released checkpoint's shape with
:func:`auralens.testing.tiny.build_shaped`.  Nothing in ``interp`` / ``probes`` / ``steering``
imports this package.
"""
