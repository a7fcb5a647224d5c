"""Durable background jobs (fine-tuning): the jobs table, a runner that claims them, and backends."""
