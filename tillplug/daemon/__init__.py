"""The daemon wing: the wiring of one process, the one scan path, health, metrics, the state lock
and systemd.  Uses the rooms below it (api, engine, flows, outbox, spool, devices…); nothing below
imports from here.
"""
