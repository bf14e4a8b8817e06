"""Routes for accounts, devices and keys under /api/v1/."""

from django.urls import path

from keys import apis

urlpatterns = [
    path("auth/challenge", apis.ChallengeApi.as_view(), name="auth-challenge"),
    path("auth/register", apis.RegisterApi.as_view(), name="auth-register"),
    path("auth/login", apis.LoginApi.as_view(), name="auth-login"),
    path("auth/logout", apis.LogoutApi.as_view(), name="auth-logout"),
    path("devices", apis.DeviceListApi.as_view(), name="devices"),
    path("devices/<int:device_id>", apis.DeviceRevokeApi.as_view(), name="device-revoke"),
    path("devices/link", apis.DeviceLinkStartApi.as_view(), name="device-link-start"),
    path("devices/link/poll", apis.DeviceLinkPollApi.as_view(), name="device-link-poll"),
    path("devices/link/<str:code>", apis.DeviceLinkApi.as_view(), name="device-link"),
    path("keys/identity", apis.IdentityKeyApi.as_view(), name="keys-identity"),
    path("keys/identity/<str:user_id>", apis.IdentityKeyDirectoryApi.as_view(), name="keys-identity-get"),
    path("keys/prekeys", apis.PreKeyUploadApi.as_view(), name="keys-prekeys"),
    path("keys/prekeys/<str:user_id>", apis.PreKeyBundleApi.as_view(), name="keys-bundle"),
]
