"""The delivery guarantees in one place: the one `send` (`delivery.sending`: claim, LPUSH and
ledger in one atomic script, fences for undecided sends), the ledger that re-sends jobs lost in
flight, the CRITICAL outbox, the dead-letter spool, and the Redis transport that sets
malformed items aside. It imports only the kernel (`sluice`)."""
