"""A pywa 4.5 webhook server (FastAPI) for the ingest benchmark's baseline.

Runs in `bench/.venv-pywa` (pywa is not a wacloud dependency):
`uvicorn --app-dir bench pywa_app:app --loop uvloop --http httptools`. Settings come from
BENCH_PYWA_PHONE_ID, BENCH_PYWA_TOKEN, BENCH_PYWA_APP_SECRET and BENCH_PYWA_VERIFY_TOKEN.
`GET /_count` answers how many updates (messages and button replies) the handler actually ran for.
"""

from __future__ import annotations

import os

from fastapi import FastAPI
from pywa_async import WhatsApp, types

app = FastAPI()
handled = 0

wa = WhatsApp(
    phone_id=os.environ["BENCH_PYWA_PHONE_ID"],
    token=os.environ["BENCH_PYWA_TOKEN"],
    server=app,
    verify_token=os.environ["BENCH_PYWA_VERIFY_TOKEN"],
    app_secret=os.environ["BENCH_PYWA_APP_SECRET"],
    validate_updates=True,
)


@wa.on_message()
async def on_message(_: WhatsApp, message: types.Message) -> None:
    global handled
    handled += 1


@wa.on_callback_button()
async def on_button(_: WhatsApp, button: types.CallbackButton) -> None:
    global handled
    handled += 1


@app.get("/_count")
async def count() -> dict[str, int]:
    return {"handled": handled}
