"""The webhook senders of a worker cluster: threads of the `qcluster` process, beside its clock.

Each round of the clock, and each thread that finishes an attempt, hands them the deliveries
of its queue that are due, as many as they have free threads, taking turns between
organizations (runs.webhooks.due_deliveries). While several organizations have deliveries due,
none gets more than half of the threads, so that one whose receivers are slow (an attempt may
take DELIVERY_TIMEOUT_SECONDS) or whose backlog is long leaves the others room; threads no one
else wants go to whoever has more.
Deliveries never enter the queue of the workers' turns: they cannot delay anyone's runs. Every
cluster of the queue sends; each attempt is claimed first (runs.webhooks.deliver), so none is
made twice at once.
"""

import logging
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from django.db import close_old_connections

from runs import webhooks

logger = logging.getLogger(__name__)


class Senders:
    def __init__(self, threads: int):
        self.threads = max(threads, 1)
        self.per_organization = max(self.threads // 2, 1)
        self.pool = ThreadPoolExecutor(self.threads, thread_name_prefix="loops-webhooks")
        self.busy: Counter = Counter()  # attempts under way, by organization
        self.lock = threading.Lock()
        self.stopped = False

    def round(self) -> int:
        """Hand the senders what is due, as far as they have room; returns how many. Each
        organization gets at most half of the threads while another one's deliveries are due
        too; the threads left over go to whoever has more."""
        with self.lock:
            free = self.threads - sum(self.busy.values())
        if free <= 0 or self.stopped:
            return 0
        due = webhooks.due_deliveries(limit=self.threads * 2, per_organization=self.threads)
        handed, picked = 0, set()
        for capped in (True, False):
            for delivery_id, organization_id in due:
                with self.lock:
                    if handed >= free or delivery_id in picked:
                        continue
                    if capped and self.busy[organization_id] >= self.per_organization:
                        continue
                    self.busy[organization_id] += 1
                picked.add(delivery_id)
                handed += 1
                self.pool.submit(self._send, delivery_id, organization_id)
        return handed

    def _send(self, delivery_id: str, organization_id: str) -> None:
        try:
            close_old_connections()
            webhooks.deliver(delivery_id)
        except Exception:  # a thread of the pool: nothing above it would say so
            # Its claim runs out and another attempt is made then (runs.webhooks._claim).
            logger.exception("webhook delivery %s failed", delivery_id)
        finally:
            close_old_connections()
            with self.lock:
                self.busy[organization_id] -= 1
        self._next()

    def _next(self) -> None:
        """A thread that is done hands out what is due at once, not at the clock's next
        round: a backlog drains as fast as the receivers answer."""
        try:
            self.round()
        except Exception:
            logger.exception("handing out webhook deliveries failed")
        finally:
            close_old_connections()

    def stop(self) -> None:
        """Finish the attempts under way (each within DELIVERY_TIMEOUT_SECONDS)."""
        self.stopped = True
        self.pool.shutdown(wait=True, cancel_futures=True)
