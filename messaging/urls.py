"""Routes for conversations, messages, receipts, typing, media and calls under /api/v1/."""

from django.urls import path

from messaging import apis

urlpatterns = [
    path("conversations", apis.ConversationListApi.as_view(), name="conversations"),
    path("conversations/<str:conversation_id>", apis.ConversationDetailApi.as_view(), name="conversation"),
    path("conversations/<str:conversation_id>/members", apis.MembersAddApi.as_view(), name="conversation-members"),
    path("conversations/<str:conversation_id>/members/<str:username>", apis.MemberRemoveApi.as_view(), name="conversation-member"),
    path("conversations/<str:conversation_id>/timer", apis.TimerApi.as_view(), name="conversation-timer"),
    path("conversations/<str:conversation_id>/messages", apis.MessagesApi.as_view(), name="conversation-messages"),
    path("conversations/<str:conversation_id>/mark-read", apis.MarkReadApi.as_view(), name="conversation-mark-read"),
    path("conversations/<str:conversation_id>/typing", apis.TypingApi.as_view(), name="conversation-typing"),
    path("messages/<str:message_id>", apis.MessageDeleteApi.as_view(), name="message"),
    path("messages/<str:message_id>/delivered", apis.MessageDeliveredApi.as_view(), name="message-delivered"),
    path("messages/<str:message_id>/read", apis.MessageReadApi.as_view(), name="message-read"),
    path("me/privacy", apis.PrivacyApi.as_view(), name="privacy"),
    path("media/upload", apis.MediaUploadApi.as_view(), name="media-upload"),
    path("media/<str:media_id>", apis.MediaDownloadApi.as_view(), name="media"),
    path("calls", apis.CallListApi.as_view(), name="calls"),
]
