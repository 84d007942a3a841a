"""Launchers: how workers are started and stopped (local subprocesses, ECS tasks)."""
