"""The boto3 calls of the SQS queue, synchronous (run on the broker's threads): batched sends
with retries of the entries SQS failed, batched deletes, receives and visibility changes."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any

from botocore.exceptions import ClientError

from wacloud.adapters.queue.sqs.bodies import MAX_MESSAGE, entry_size

BATCH = 10  # entries per SendMessageBatch / DeleteMessageBatch (SQS's limit)
ATTEMPTS = 5  # tries of an entry SQS failed on its side
RETRY_PAUSE_S = 0.1  # doubled at each try: a pause between retries on a worker thread
# Errors that say a receipt no longer holds its message: acked, released and received again,
# or its visibility ran out.
STALE_RECEIPT = frozenset({"ReceiptHandleIsInvalid", "InvalidParameterValue",
                           "AWS.SimpleQueueService.MessageNotInflight", "MessageNotInflight"})


class SqsBatchError(RuntimeError):
    """SQS refused entries of a batch (the sender's fault) or kept failing them."""


def error_code(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def whole_seconds(seconds: float, most: int) -> int:
    """SQS counts visibility and delays in whole seconds: round up (never sooner than asked)."""
    return min(max(math.ceil(seconds - 1e-9), 0), most)


def batches(entries: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    """`entries` cut into SendMessageBatch calls: at most 10, and at most 256 KiB together."""
    batch: list[dict[str, Any]] = []
    size = 0
    for entry in entries:
        this = entry_size(entry)
        if batch and (len(batch) == BATCH or size + this > MAX_MESSAGE):
            yield batch
            batch, size = [], 0
        batch.append(entry)
        size += this
    if batch:
        yield batch


def send_entries(client: Any, url: str, entries: list[dict[str, Any]]) -> None:
    """Send every entry (SendMessageBatch entries without `Id`); entries SQS fails on its side
    are sent again, up to ATTEMPTS times. Returns once SQS has stored them all."""
    for batch in batches(entries):
        pending = {str(index): entry for index, entry in enumerate(batch)}
        pause = RETRY_PAUSE_S
        for attempt in range(1, ATTEMPTS + 1):
            answer = client.send_message_batch(QueueUrl=url, Entries=[
                {"Id": key, **entry} for key, entry in pending.items()])
            failed = answer.get("Failed") or []
            if not failed:
                break
            refused = [f for f in failed if f.get("SenderFault")]
            if refused or attempt == ATTEMPTS:
                first = (refused or failed)[0]
                raise SqsBatchError(f"SQS did not take {len(failed)} message(s) of a batch: "
                                    f"{first.get('Code')}: {first.get('Message', '')}")
            pending = {f["Id"]: pending[f["Id"]] for f in failed}
            time.sleep(pause)
            pause *= 2


def delete_receipts(client: Any, url: str, receipts: list[str]) -> set[str]:
    """Delete the messages of `receipts`; returns the receipts deleted (a stale or unknown
    receipt is skipped, as the port wants). Entries failed on SQS's side are tried again."""
    deleted: set[str] = set()
    for start in range(0, len(receipts), BATCH):
        pending = {str(i): r for i, r in enumerate(receipts[start:start + BATCH])}
        pause = RETRY_PAUSE_S
        for attempt in range(1, ATTEMPTS + 1):
            answer = client.delete_message_batch(QueueUrl=url, Entries=[
                {"Id": key, "ReceiptHandle": receipt} for key, receipt in pending.items()])
            deleted.update(pending[ok["Id"]] for ok in answer.get("Successful") or [])
            retry = {f["Id"]: pending[f["Id"]] for f in answer.get("Failed") or []
                     if not f.get("SenderFault") and f.get("Code") not in STALE_RECEIPT}
            if not retry:
                break
            if attempt == ATTEMPTS:
                raise SqsBatchError(f"SQS kept failing to delete {len(retry)} message(s)")
            pending = retry
            time.sleep(pause)
            pause *= 2
    return deleted


def change_visibility(client: Any, url: str, receipt: str, seconds: int) -> bool:
    """ChangeMessageVisibility; False when the receipt no longer holds its message."""
    try:
        client.change_message_visibility(QueueUrl=url, ReceiptHandle=receipt,
                                          VisibilityTimeout=seconds)
    except ClientError as exc:
        if error_code(exc) in STALE_RECEIPT:
            return False
        raise
    return True


def release_all(client: Any, url: str, receipts: list[str]) -> None:
    """Make the messages of `receipts` visible again now (after a scan)."""
    for start in range(0, len(receipts), BATCH):
        client.change_message_visibility_batch(QueueUrl=url, Entries=[
            {"Id": str(i), "ReceiptHandle": r, "VisibilityTimeout": 0}
            for i, r in enumerate(receipts[start:start + BATCH])])


def receive(client: Any, url: str, count: int, visibility: int, wait: int) -> list[dict[str, Any]]:
    answer = client.receive_message(
        QueueUrl=url, MaxNumberOfMessages=min(max(count, 1), BATCH), VisibilityTimeout=visibility,
        WaitTimeSeconds=wait, MessageSystemAttributeNames=["All"], MessageAttributeNames=["All"])
    messages: list[dict[str, Any]] = answer.get("Messages") or []
    return messages


def counts(client: Any, url: str) -> dict[str, int]:
    """visible, in_flight, delayed of one queue (SQS's approximate counts)."""
    attrs = client.get_queue_attributes(QueueUrl=url, AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible",
        "ApproximateNumberOfMessagesDelayed"])["Attributes"]
    return {"visible": int(attrs.get("ApproximateNumberOfMessages", 0)),
            "in_flight": int(attrs.get("ApproximateNumberOfMessagesNotVisible", 0)),
            "delayed": int(attrs.get("ApproximateNumberOfMessagesDelayed", 0))}
