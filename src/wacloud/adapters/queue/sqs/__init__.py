"""Queues on Amazon SQS (`WACLOUD_QUEUE_URL=sqs://?prefix=NAME`), with boto3 on a thread pool.

`names.py` maps port names to SQS names; `broker.py` holds the client, the URLs and the
provisioning (`create_queues`); `queue.py` the port's operations (its docstring says what SQS
decides and how each operation maps to it); `calls.py` the batched boto3 calls; `bodies.py`
the bodies (text, base64, or a pointer into the media store over 256 KB); `entries.py` the
messages this adapter sends or re-sends; `letters.py` scans (dead letters, deletes by id);
`receipts.py` what this process knows of the receipts it handed out.
"""

from wacloud.adapters.queue.sqs.broker import SqsBroker, open_broker
from wacloud.adapters.queue.sqs.queue import SqsQueue

__all__ = ["SqsBroker", "SqsQueue", "open_broker"]
