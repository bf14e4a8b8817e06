"""HTTP APIs for conversations, envelopes, receipts, typing, privacy, media and calls. Each
view: validate with its input serializer, call one service or selector, serialize the answer."""

from __future__ import annotations

from typing import Any

from django.http import FileResponse
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.parsers import BaseParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from enigmo.fields import Base64BytesField, StrictBooleanField, StrictCharField, UsernameField
from messaging import errors, selectors, services
from messaging.models import Call, Conversation, Message


class ParticipantOut(serializers.Serializer):
    user_id = serializers.CharField()
    role = serializers.CharField()


class ConversationOut(serializers.Serializer):
    id = serializers.UUIDField()
    kind = serializers.CharField()
    participants = ParticipantOut(many=True)
    unread_count = serializers.IntegerField()
    last_seq = serializers.IntegerField()
    last_activity_at = serializers.CharField()
    disappearing_seconds = serializers.IntegerField(allow_null=True)
    encrypted_meta = Base64BytesField(allow_null=True)


class ParticipantDetailOut(ParticipantOut):
    devices = serializers.ListField(child=serializers.IntegerField())
    online = serializers.BooleanField(allow_null=True)
    last_seen = serializers.CharField(allow_null=True)


class ConversationDetailOut(ConversationOut):
    participants = ParticipantDetailOut(many=True)


class ConversationListApi(APIView):
    class InputSerializer(serializers.Serializer):
        kind = serializers.ChoiceField(choices=Conversation.Kind.choices)
        members = serializers.ListField(child=UsernameField(), min_length=1, max_length=100)
        encrypted_meta = Base64BytesField(max_length=16 * 1024, required=False, allow_null=True, default=None)

    @extend_schema(responses={200: ConversationOut(many=True)}, operation_id="conversations_list")
    def get(self, request: Request) -> Response:
        return Response(ConversationOut(selectors.conversation_list_for_user(user=request.user), many=True).data)

    @extend_schema(request=InputSerializer, responses={201: ConversationDetailOut, 200: ConversationDetailOut}, operation_id="conversations_create")
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        conversation, created = services.conversation_create(creator=request.user, **data.validated_data)
        detail = selectors.conversation_detail_for_user(user=request.user, conversation_id=conversation.public_id)
        return Response(ConversationDetailOut(detail).data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)


class ConversationDetailApi(APIView):
    @extend_schema(responses={200: ConversationDetailOut}, operation_id="conversations_get")
    def get(self, request: Request, conversation_id: str) -> Response:
        detail = selectors.conversation_detail_for_user(user=request.user, conversation_id=conversation_id)
        return Response(ConversationDetailOut(detail).data)


class MembersAddApi(APIView):
    class InputSerializer(serializers.Serializer):
        add = serializers.ListField(child=UsernameField(), min_length=1, max_length=100)

    @extend_schema(request=InputSerializer, responses={200: ConversationDetailOut}, operation_id="conversations_members_add")
    def post(self, request: Request, conversation_id: str) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        services.conversation_members_add(actor=request.user, conversation_id=conversation_id, usernames=data.validated_data["add"])
        detail = selectors.conversation_detail_for_user(user=request.user, conversation_id=conversation_id)
        return Response(ConversationDetailOut(detail).data)


class MemberRemoveApi(APIView):
    @extend_schema(request=None, responses={204: None}, operation_id="conversations_members_remove")
    def delete(self, request: Request, conversation_id: str, username: str) -> Response:
        services.conversation_member_remove(actor=request.user, conversation_id=conversation_id, username=username)
        return Response(status=status.HTTP_204_NO_CONTENT)


class TimerApi(APIView):
    class InputSerializer(serializers.Serializer):
        seconds = serializers.IntegerField(min_value=1, max_value=services.MAX_EXPIRES_SECONDS, allow_null=True)

    @extend_schema(request=InputSerializer, responses={200: InputSerializer}, operation_id="conversations_timer_set")
    def post(self, request: Request, conversation_id: str) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        conversation = services.conversation_timer_set(actor=request.user, conversation_id=conversation_id, **data.validated_data)
        return Response({"seconds": conversation.disappearing_seconds})


class RecipientIn(serializers.Serializer):
    user_id = StrictCharField(max_length=150)
    device_id = serializers.IntegerField(min_value=1, max_value=2**32 - 1)
    ciphertext = Base64BytesField()  # size is checked by the service: 413, not 400


class SendInput(serializers.Serializer):
    """The envelope. Sender, seq, times and device fields in a body are ignored."""

    client_message_id = serializers.UUIDField()
    kind = serializers.ChoiceField(choices=Message.Kind.choices, default=Message.Kind.MESSAGE)
    reply_to = serializers.UUIDField(required=False, allow_null=True, default=None)
    reaction_to = serializers.UUIDField(required=False, allow_null=True, default=None)
    expires_in = serializers.IntegerField(min_value=1, max_value=services.MAX_EXPIRES_SECONDS, required=False, allow_null=True, default=None)
    attachments = serializers.ListField(child=serializers.RegexField(r"^[A-Za-z0-9_-]{1,64}$"), required=False, max_length=32, default=list)
    recipients = RecipientIn(many=True, allow_empty=True, max_length=1000)


def send_kwargs(validated: dict[str, Any]) -> dict[str, Any]:
    data = dict(validated)
    data["recipients"] = [services.RecipientInput(**r) for r in data["recipients"]]
    return data


class SendOut(serializers.Serializer):
    id = serializers.UUIDField()
    seq = serializers.IntegerField()
    created_at = serializers.CharField()
    expires_at = serializers.CharField(allow_null=True)


class SenderOut(serializers.Serializer):
    user_id = serializers.CharField(allow_null=True)
    device_id = serializers.IntegerField(allow_null=True)


class MessageOut(serializers.Serializer):
    id = serializers.UUIDField()
    seq = serializers.IntegerField()
    sender = SenderOut()
    kind = serializers.CharField()
    reply_to = serializers.UUIDField(allow_null=True)
    reaction_to = serializers.UUIDField(allow_null=True)
    created_at = serializers.CharField()
    expires_at = serializers.CharField(allow_null=True)
    deleted = serializers.BooleanField()
    ciphertext = Base64BytesField(allow_null=True)
    delivered_at = serializers.CharField(allow_null=True)
    read_at = serializers.CharField(allow_null=True)


class MessageListOut(serializers.Serializer):
    messages = MessageOut(many=True)
    has_more = serializers.BooleanField()


class MessagesApi(APIView):
    class QuerySerializer(serializers.Serializer):
        after_seq = serializers.IntegerField(min_value=0, default=0)
        limit = serializers.IntegerField(min_value=1, max_value=500, default=100)

    @extend_schema(
        parameters=[QuerySerializer],
        responses={200: MessageListOut},
        operation_id="messages_list",
    )
    def get(self, request: Request, conversation_id: str) -> Response:
        query = self.QuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        page = selectors.messages_list_for_device(device=request.auth, conversation_id=conversation_id, **query.validated_data)
        return Response(MessageListOut(page).data)

    @extend_schema(request=SendInput, responses={201: SendOut, 200: SendOut}, operation_id="messages_send")
    def post(self, request: Request, conversation_id: str) -> Response:
        data = SendInput(data=request.data)
        data.is_valid(raise_exception=True)
        answer, created = services.message_send(sender_device=request.auth, conversation_id=conversation_id, **send_kwargs(data.validated_data))
        return Response(SendOut(answer).data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)


class MessageDeleteApi(APIView):
    @extend_schema(request=None, responses={204: None}, operation_id="messages_delete")
    def delete(self, request: Request, message_id: str) -> Response:
        services.message_delete(device=request.auth, message_id=message_id)
        return Response(status=status.HTTP_204_NO_CONTENT)


class ReceiptOut(serializers.Serializer):
    message_id = serializers.UUIDField()
    status = serializers.CharField()


class MessageDeliveredApi(APIView):
    @extend_schema(request=None, responses={200: ReceiptOut}, operation_id="messages_delivered")
    def post(self, request: Request, message_id: str) -> Response:
        services.message_delivered(device=request.auth, message_id=message_id)
        return Response(ReceiptOut({"message_id": message_id, "status": "delivered"}).data)


class MessageReadApi(APIView):
    @extend_schema(request=None, responses={200: ReceiptOut}, operation_id="messages_read")
    def post(self, request: Request, message_id: str) -> Response:
        services.message_read(device=request.auth, message_id=message_id)
        return Response(ReceiptOut({"message_id": message_id, "status": "read"}).data)


class MarkReadApi(APIView):
    class InputSerializer(serializers.Serializer):
        seq = serializers.IntegerField(min_value=0)

    @extend_schema(request=InputSerializer, responses={200: InputSerializer}, operation_id="conversations_mark_read")
    def post(self, request: Request, conversation_id: str) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        seq = services.conversation_mark_read(device=request.auth, conversation_id=conversation_id, seq=data.validated_data["seq"])
        return Response({"seq": seq})


class TypingApi(APIView):
    class InputSerializer(serializers.Serializer):
        state = serializers.ChoiceField(choices=["started", "stopped"])

    @extend_schema(request=InputSerializer, responses={202: None}, operation_id="conversations_typing")
    def post(self, request: Request, conversation_id: str) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        services.typing_send(device=request.auth, conversation_id=conversation_id, state=data.validated_data["state"])
        return Response(status=status.HTTP_202_ACCEPTED)


class PrivacyApi(APIView):
    class InputSerializer(serializers.Serializer):
        read_receipts = StrictBooleanField(required=False)
        presence = StrictBooleanField(required=False)

    class OutputSerializer(serializers.Serializer):
        read_receipts = serializers.BooleanField()
        presence = serializers.BooleanField()

    @extend_schema(responses={200: OutputSerializer}, operation_id="privacy_get")
    def get(self, request: Request) -> Response:
        return Response(self.OutputSerializer(selectors.privacy_get(user_pk=request.user.pk)).data)

    @extend_schema(request=InputSerializer, responses={200: OutputSerializer}, operation_id="privacy_set")
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        return Response(self.OutputSerializer(services.privacy_set(user=request.user, **data.validated_data)).data)


class RawBlobParser(BaseParser):
    """Leaves the body unread: the upload view streams it to disk itself."""

    media_type = "application/octet-stream"

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        return stream


class MediaUploadApi(APIView):
    parser_classes = [RawBlobParser]

    class OutputSerializer(serializers.Serializer):
        id = serializers.CharField(source="token")
        size = serializers.IntegerField()

    @extend_schema(
        parameters=[OpenApiParameter("conversation_id", str, required=True)],
        request={"application/octet-stream": bytes},
        responses={201: OutputSerializer},
        operation_id="media_upload",
    )
    def post(self, request: Request) -> Response:
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0) or None
        except ValueError:
            length = None
        media = services.media_store(
            device=request.auth,
            conversation_id=request.query_params.get("conversation_id"),
            stream=request._request,
            content_length=length,
        )
        return Response(self.OutputSerializer(media).data, status=status.HTTP_201_CREATED)


class MediaDownloadApi(APIView):
    @extend_schema(responses={(200, "application/octet-stream"): bytes}, operation_id="media_download")
    def get(self, request: Request, media_id: str) -> FileResponse:
        media = selectors.media_get_for_user(user=request.user, media_id=media_id)
        try:
            blob = open(services.media_path(media.token), "rb")
        except FileNotFoundError:
            raise errors.MediaNotFound() from None
        response = FileResponse(blob, as_attachment=True, filename=f"{media.token}.bin")
        response["Content-Type"] = "application/octet-stream"
        return response


class CallOut(serializers.Serializer):
    id = serializers.UUIDField()
    conversation_id = serializers.UUIDField()
    caller = SenderOut()
    type = serializers.ChoiceField(choices=Call.Kind.choices)
    status = serializers.CharField()
    started_at = serializers.CharField()
    answered_at = serializers.CharField(allow_null=True)
    ended_at = serializers.CharField(allow_null=True)


class CallListApi(APIView):
    @extend_schema(responses={200: CallOut(many=True)}, operation_id="calls_list")
    def get(self, request: Request) -> Response:
        return Response(CallOut(selectors.calls_list_for_user(user=request.user), many=True).data)
