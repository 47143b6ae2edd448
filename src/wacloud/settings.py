"""All settings in one object, from `WACLOUD_*` environment variables and/or a TOML file.

The config file is `WACLOUD_CONFIG` (or `<data dir>/wacloud.toml` when present); environment
variables override it. Nothing here is secret except the optional encryption key, which is
never printed (its repr is hidden).
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WACLOUD_", extra="ignore")

    data_dir: Path = Path(".wacloud")
    # Where the queues live: `sqlite:///PATH` (default: `<data dir>/queues.db`), `sqs://?prefix=NAME`
    # or `amqp://USER:PW@HOST:PORT/VHOST?prefix=NAME`.
    queue_url: str | None = Field(default=None, repr=False)
    # Where media files go: `file:///PATH` (default: `<data dir>/media`) or `s3://BUCKET/PREFIX`.
    media_url: str | None = None
    # Registry URL; default: a SQLite file in the data dir.
    registry_url: str | None = None
    # Fernet keys (comma separated, newest first); default: the key file in the data dir.
    encryption_key: str | None = Field(default=None, repr=False)
    # A Meta app secret valid for every channel (one Meta app usually serves many tenants).
    meta_app_secret: str | None = Field(default=None, repr=False)
    dev_allow_local_urls: bool = False

    max_webhook_bytes: int = 3 * 1024 * 1024
    # A connection that sends nothing, or nothing more after a request, is closed after this
    # (uvicorn's keep-alive timeout, also applied before a connection's first request).
    http_keep_alive_s: float = 5.0
    # A request's headers and body must have arrived this long after its first byte, or the
    # client gets 408 and the connection is closed: a client trickling bytes cannot hold a
    # connection (and its buffers) for ever.
    http_request_timeout_s: float = 30.0
    # Bodies of other Meta products sharing the callback URL (`object` "page", "instagram",
    # ...) are answered 200 and only counted; set this to park each of them instead.
    park_other_meta_objects: bool = False
    # `/metrics` and `/internal/credentials` listen here, never on the public webhook port.
    internal_host: str = "127.0.0.1"
    internal_port: int = 8081
    max_media_bytes: int = 100 * 1024 * 1024
    media_timeout_s: float = 60.0
    media_first_try_timeout_s: float = 10.0
    media_max_attempts: int = 6
    media_backoff_base_s: float = 2.0
    media_backoff_max_s: float = 300.0
    # Downloads in flight per process that runs the media stage (the server and the storing
    # worker). While webhooks wait on `inbound.raw` each runs only one: rows come first.
    media_concurrency: int = 16

    queue_synchronous: str = "FULL"
    queue_max_receives: int = 5
    # How long a received message stays hidden before it is redelivered (a crashed worker's
    # messages come back after this).
    queue_visibility_timeout_s: float = 30.0
    # A failure that is the database's (down, locked, failing over) is retried with capped
    # exponential backoff for this long after the message was queued, then dead-lettered.
    db_retry_period_s: float = 24 * 3600.0
    db_retry_max_delay_s: float = 60.0
    # How long a write to a tenant's SQLite file waits for a lock another process holds
    # before it counts as database trouble (and is retried as above).
    sqlite_busy_timeout_s: float = 30.0
    # Tenant databases held open per process: each tenant's engine pools at most this many
    # connections (server databases; SQLite keeps one), at most `tenant_engines_max` engines
    # are open at once (least recently used closed first), and one unused this long is closed.
    tenant_pool_size: int = 4
    tenant_engines_max: int = 64
    tenant_idle_close_s: float = 300.0
    # Outbound
    # A tenant whose outbox had rows is looked at again this soon; one that had none, after
    # twice its last wait, up to `collect_idle_max_s` (a row the API inserts wakes its tenant
    # at once; a row inserted directly into an idle tenant's database waits up to that long).
    collect_poll_s: float = 1.0
    collect_idle_max_s: float = 3.0
    # Tenants collected at the same time (each a claim on its own database).
    collect_concurrency: int = 16
    collect_batch: int = 500
    # AWS Lambda's collector: each scheduled invocation runs collect passes for this long
    # (`collect_poll_s` apart; 0 = one pass), so rows wait a poll interval, not the schedule's.
    lambda_collect_window_s: float = 0.0
    reservation_lease_s: float = 300.0  # reserved rows older than this go back to pending
    # Queued rows untouched for this long (no attempt, no result) have their envelope queued
    # again with the same de-duplication id: a lost queue message or lost result must not
    # strand a row. Longer than the longest gap between a row's attempts (send backoff cap),
    # so that a row in a retry backoff is rarely re-queued (and a copy is harmless: the send
    # stage checks the row, not the queue).
    queued_stale_s: float = 900.0
    # Sends in flight per process (and connections per provider host). A send mostly waits on
    # the provider: 1,000 messages/s at Graph's ~200 ms per call need ~200 of them.
    send_concurrency: int = 256
    # Temporary provider trouble (5xx, timeouts, Meta 1, 2, 4, 80007, 130429, 131000, ...) is
    # retried with capped exponential backoff for this long from the row's first temporary
    # failure, then the row fails with the last error.
    send_retry_period_s: float = 3600.0
    # A safety cap only: with the default backoff an hour of retries is about 25 attempts.
    send_max_attempts: int = 100
    send_backoff_base_s: float = 1.0
    send_backoff_max_s: float = 300.0
    send_timeout_s: float = 30.0
    # A send attempt holds its row for its longest possible run (3 x the send timeout, plus
    # the inline pacing wait) and this margin: for slow commits and clocks that differ between
    # hosts. A row whose send was at the provider when its process died is sent again only
    # after the lease, so a smaller margin recovers sooner where clocks agree.
    send_lease_margin_s: float = Field(default=30.0, ge=0)
    # A number's limit counts sends by when they start; its window is this much longer than
    # a second, for the jitter between our start and the provider's arrival.
    send_rate_margin: float = 0.05
    pair_burst: int = 45  # Meta's pair rate limit: a burst, then one message per interval
    pair_interval_s: float = 6.0

    # Graceful stop (SIGTERM or SIGINT; a second one exits at once): the listeners stop
    # accepting and the stages stop receiving; what is in flight gets this long to finish, and
    # what has not finished by then goes back to its queue at once (for another process), then
    # pending writes are flushed and the process exits 0.
    shutdown_grace_s: float = 20.0
    # Backpressure: webhooks are answered 503 with Retry-After (providers retry them) while
    # `inbound.raw` holds this many messages, or while the data dir's disk has less than this
    # many MB free, instead of filling the disk while the stages are far behind.
    inbound_queue_limit: int = 1_000_000
    min_free_disk_mb: int = 512

    # Largest tenant API request body (POST /v1/messages); larger ones are answered 413.
    api_max_body_bytes: int = 64 * 1024

    registry_poll_s: float = 1.0
    credentials_cache_s: float = 30.0
    retention_interval_s: float = 3600.0  # how often tenants' retention periods are applied
    # `serve` runs the stages in worker processes beside the HTTP server: 1 = one worker for
    # every stage the server does not run itself (`server_stages`); 2 = the storing stages
    # (receive, write, save) apart from the network ones (media, send); 0 = all on the HTTP
    # server's loop. Workers run at this much lower CPU priority: webhook answers first, the
    # queue absorbs the rest.
    stage_workers: int = 1
    # Stages the HTTP server's own loop runs beside the workers (comma-separated; "" = none).
    # The network-bound ones by default: downloads and sends mostly wait, and on a second GIL
    # they stop taking turns with parsing and storing (bench/inbound.py: media finished with
    # the rows instead of seconds after them), without the memory of another process.
    server_stages: str = "media,send"
    # With the embedded queue, `serve` splits the send stage between its HTTP process and its
    # (first) worker by sending number: each number's sends, and so its rate limit, stay in
    # one process, and a bulk send uses both CPUs. While the worker is down the HTTP process
    # sends for every number.
    send_split: bool = True
    worker_nice: int = 10
    # CPU ids ("0", "1,3", "2-5") for the HTTP process and the stage workers; "" = any CPU;
    # "auto" for the server: its own CPU, the others for the workers (2+ CPUs only).
    server_cpus: str = ""
    worker_cpus: str = ""
    # Stage metrics live in the workers: worker N serves /metrics on this port + N (0 = off).
    worker_metrics_port: int = 0
    # Where `serve` and its workers keep their metric files (memory-mapped): default a
    # directory under /dev/shm (else `<data dir>/metrics`), never on a disk that can fill up.
    metrics_dir: Path | None = None

    log_level: str = "INFO"
    log_json: bool = False

    @property
    def queue_path(self) -> Path:
        return self.data_dir / "queues.db"

    @property
    def media_dir(self) -> Path:
        return self.data_dir / "media"

    @property
    def queues(self) -> str:
        """The queue URL in effect (`queue_url`, else the embedded SQLite file)."""
        return self.queue_url or f"sqlite:///{self.queue_path.resolve()}"

    @property
    def media(self) -> str:
        """The media store URL in effect (`media_url`, else the local folder)."""
        return self.media_url or f"file://{self.media_dir.resolve()}"

    @property
    def tenants_dir(self) -> Path:
        return self.data_dir / "tenants"

    @property
    def key_file(self) -> Path:
        return self.data_dir / "encryption.key"

    @property
    def registry(self) -> str:
        return self.registry_url or f"sqlite:///{(self.data_dir / 'registry.db').resolve()}"


def load_settings(data_dir: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings: config file, then environment, then explicit overrides (CLI flags)."""
    file_values: dict[str, Any] = {}
    config_path = os.environ.get("WACLOUD_CONFIG")
    base_dir = data_dir or Path(os.environ.get("WACLOUD_DATA_DIR", ".wacloud"))
    candidate = Path(config_path) if config_path else base_dir / "wacloud.toml"
    if candidate.is_file():
        with candidate.open("rb") as handle:
            file_values = tomllib.load(handle)
    env_settings = Settings()
    merged: dict[str, Any] = {**file_values}
    for name in Settings.model_fields:
        if f"WACLOUD_{name.upper()}" in os.environ:
            merged[name] = getattr(env_settings, name)
    if data_dir is not None:
        merged["data_dir"] = data_dir
    merged.update({k: v for k, v in overrides.items() if v is not None})
    return Settings.model_validate(merged)
