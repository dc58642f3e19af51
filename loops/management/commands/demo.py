import os
import signal
import socket
import subprocess
import sys

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from loops.demo import DEMO_PASSWORD, DEMO_USER, demo_setup
from loops_project.lifeline import die_with_parent


def port_free(host: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


class Command(BaseCommand):
    help = (
        "Migrate, create the demo organization, login and greeting loop, then start the web "
        "server and a worker cluster together."
    )

    def add_arguments(self, parser):
        parser.add_argument("--no-serve", action="store_true", help="set up only; start nothing")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--host", default="127.0.0.1")

    def handle(self, *args, no_serve, port, host, **options):
        if not no_serve and not port_free(host, port):
            raise CommandError(f"Port {port} on {host} is already in use: choose another with "
                               "--port.")  # fmt: skip
        call_command("migrate", interactive=False, verbosity=0)
        org, loop = demo_setup()
        url = f"http://{host}:{port}/"
        self.stdout.write(self.style.SUCCESS("Loops demo is ready."))
        self.stdout.write(f"  URL:    {url}")
        self.stdout.write(f"  Login:  {DEMO_USER} / {DEMO_PASSWORD}")
        self.stdout.write(f"  Admin:  {url}admin/")
        self.stdout.write(
            f"  Loop:   {loop.name} ({org.slug}/{loop.slug}), version {loop.active_version.number}"
        )
        self.stdout.write(
            f"  Try:    {sys.executable} manage.py trigger {org.slug} {loop.slug} "
            """--input '{"name": "Khaya"}' --wait"""
        )
        if no_serve:
            return
        manage = os.path.join(settings.BASE_DIR, "manage.py")
        # The cluster stops with this command however it ends (runserver leaves with os._exit
        # on some errors); SIGTERM lets it stop its workers and their sandboxes.
        cluster = subprocess.Popen(
            [sys.executable, manage, "qcluster"],
            preexec_fn=lambda: die_with_parent(signal.SIGTERM),  # one thread here: safe
        )
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # to the `finally` below
        self.stdout.write(
            f"  Worker: django-q2 cluster (pid {cluster.pid}, {settings.LOOPS_WORKERS} workers)"
        )
        try:
            call_command("runserver", f"{host}:{port}", use_reloader=False)
        finally:
            cluster.send_signal(signal.SIGTERM)
            try:
                cluster.wait(timeout=15)
            except subprocess.TimeoutExpired:
                cluster.kill()
