"""The running service: the daemon's display loop, the task workers, status server, sd_notify, reports.

``daemon`` drives the loop and owns the threads; ``worker`` runs one task's models and imports nothing
from ``daemon``. The ``*_cli`` modules and ``demo`` are the ``endoedge run``, ``check-config`` and
``demo`` commands.
"""
