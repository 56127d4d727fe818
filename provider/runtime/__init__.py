"""What runs where the work runs; free of Airflow imports."""

from provider.runtime.failure import Failure
from provider.runtime.payload import Payload, ResultLayout

__all__ = ["Failure", "Payload", "ResultLayout"]
