"""The pure stages: smoothing, coverage, exam tasks and the overlay renderer, and the types they share.

Numpy in, numpy out: no threads, no files, no sockets. Every time they see is the media time of the
frame they are given (capture time live, presentation time on a replay), never the wall clock, so a
replay gives the same results paced or not. This package imports nothing from
:mod:`endoedge.edge.video`, :mod:`endoedge.edge.service` or :mod:`endoedge.edge.box`.
"""
