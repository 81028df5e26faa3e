from agentdistill.models.base import ChatModel, Completion, Message, call_record
from agentdistill.models.registry import check_credentials, check_model_id, make_model

__all__ = ["ChatModel", "Completion", "Message", "call_record", "check_credentials", "check_model_id", "make_model"]
