"""`manage.py qcluster`: django-q2's worker cluster, with Loops' clock and lifelines.

django-q2's own command starts the cluster (a sentinel process, its workers, pusher and
monitor). This one also:

- runs the clock (runs.clock) in this process until the cluster stops: timers, cron
  schedules, runs of dead workers taken up, idle workers woken;
- stops gracefully in about one run's time: workers finish the runs in hand and take no more
  (a turn would otherwise go on claiming for up to LOOPS_TURN_SECONDS);
- turns on the heartbeat of executions in the workers (runs.engine.heartbeat), and their
  lanes: each worker executes up to LOOPS_EXECUTIONS_PER_WORKER runs at once
  (runs.engine.turns), and starts every lane's sandbox as it starts, before its first task;
- makes every process of the cluster die with its parent, so that killing this process
  never leaves workers running beside the next cluster;
- stops even when the whole process group is signalled (systemd, a terminal's Ctrl-C, a
  supervisor's `kill -TERM -PGID`): django-q2's sentinel dies of that SIGTERM while it waits
  on the cluster's stop event, and django-q2's own stop then waits for it forever.
"""

import multiprocessing.util
import os
import signal
import threading

from django.conf import settings
from django_q.cluster import Cluster
from django_q.management.commands.qcluster import Command as DjangoQCommand
from django_q.signals import post_spawn

from loops_project.lifeline import die_with_parent
from runs import clock
from runs.engine import heartbeat, turns


class _Lifeline:
    """Registered with multiprocessing: every process it forks for the cluster runs
    `attach` first."""

    def attach(self) -> None:
        parent = os.getppid()
        die_with_parent(signal.SIGKILL)
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
        turns.enable_lanes()
        post_spawn.connect(turns.start_worker, dispatch_uid="loops-start-worker")
        multiprocessing.util.register_after_fork(LIFELINE, _Lifeline.attach)
        cluster = Cluster()
        stopping = threading.Event()
        stop_flag = turns.share_stop_flag()

        def stop_soon(*_):
            stop_flag.value = True  # workers finish the runs in hand and take no more
            stopping.set()

        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, stop_soon)
        cluster.start()
        if not options.get("run_once"):
            clock.run(until=lambda: stopping.is_set() or not cluster.sentinel.is_alive())
        stop(cluster)


def stop(cluster: Cluster) -> None:
    """django-q2's graceful stop (workers end their tasks), unless the sentinel is dead or dies
    meanwhile: its workers then died with it (the lifeline), and django-q2's stop would wait on
    the dead sentinel's event for ever."""
    if not cluster.sentinel.is_alive():
        return
    stopper = threading.Thread(target=cluster.stop, daemon=True)
    stopper.start()
    while stopper.is_alive() and cluster.sentinel.is_alive():
        stopper.join(0.25)
