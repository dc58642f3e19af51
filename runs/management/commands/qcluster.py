"""`manage.py qcluster`: django-q2's worker cluster, with Loops' clock and lifelines.

django-q2's own command starts the cluster (a sentinel process, its workers, pusher and
monitor). This one also:

- runs the clock (runs.clock) in this process until the cluster stops: timers, cron
  schedules, runs of dead workers taken up, idle workers woken;
- turns on the heartbeat of executions in the workers (runs.engine.heartbeat);
- makes every process of the cluster die with its parent, so that killing this process
  never leaves workers running beside the next cluster.
"""

import ctypes
import multiprocessing.util
import os
import signal

from django.conf import settings
from django_q.cluster import Cluster
from django_q.management.commands.qcluster import Command as DjangoQCommand

from runs import clock
from runs.engine import heartbeat

PR_SET_PDEATHSIG = 1


class _Lifeline:
    """Registered with multiprocessing: every process it forks for the cluster runs
    `attach` first."""

    def attach(self) -> None:
        parent = os.getppid()
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before the lifeline was attached
            os._exit(1)


LIFELINE = _Lifeline()


class Command(DjangoQCommand):
    help = "Starts the worker cluster (django-q2) with the clock of Loops."

    def handle(self, *args, **options):
        settings.SECRET_KEY  # noqa: B018 - django-q2 signs its tasks with it
        if options.get("cluster_name"):
            os.environ["Q_CLUSTER_NAME"] = options["cluster_name"]
        heartbeat.enable()
        multiprocessing.util.register_after_fork(LIFELINE, _Lifeline.attach)
        cluster = Cluster()
        cluster.start()
        if options.get("run_once"):
            cluster.stop()
            return
        clock.run(until=lambda: cluster.sentinel is None or not cluster.sentinel.is_alive())
