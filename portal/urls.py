from allauth.account.decorators import secure_admin_login
from django.contrib import admin
from django.urls import include, path, re_path

from portal.api import api
from projects import views as project_views

# The admin signs in through allauth: one login page, with throttling and MFA.
admin.site.login = secure_admin_login(admin.site.login)  # type: ignore[method-assign]
admin.site.site_header = "Stackport administration"
admin.site.site_title = "Stackport admin"

# allauth views whose invalid forms answer 400; listed before allauth's own patterns.
_account_overrides = [
    path("accounts/login/", project_views.login, name="account_login"),
    path("accounts/signup/", project_views.signup, name="account_signup"),
    path("accounts/email/", project_views.email, name="account_email"),
    path("accounts/password/change/", project_views.password_change, name="account_change_password"),
    path("accounts/password/reset/", project_views.password_reset, name="account_reset_password"),
    re_path(
        r"^accounts/password/reset/key/(?P<uidb36>[0-9A-Za-z]+)-(?P<key>.+)/$",
        project_views.password_reset_from_key,
        name="account_reset_password_from_key",
    ),
    path("accounts/2fa/totp/activate/", project_views.totp_activate, name="mfa_activate_totp"),
]

# The styled 500 page with the site's name (Django renders it without context processors).
handler500 = "portal.views.server_error"

urlpatterns = [
    path("", include("portal.portal_urls")),
    path("", include("projects.urls")),
    path("", include("stacks.urls")),
    path("", include("billing.urls")),
    path("support/", include("portal.support_urls")),
    *_account_overrides,
    path("accounts/", include("allauth.urls")),
    path("admin/", admin.site.urls),
    path("api/", api.urls),
]
