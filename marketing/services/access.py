"""The marketer's access: the Marketer group and its logins."""

from __future__ import annotations

from django.contrib.auth.models import Group, Permission, User
from django.db import transaction
from django.db.models import Q

MARKETER_GROUP = "Marketer"

# What a marketer may do, by app label and permission codename. Entries whose model does not
# exist (yet) are skipped, so each app adds its own here as it grows; the group is rebuilt
# from this list after every migrate (receivers.sync_marketer_group).
MARKETER_PERMISSIONS: dict[str, list[str]] = {
    # customers' consent and contact details are the marketer's to correct; the rest is
    # what the shop reported and is only read; the suppression list is theirs to keep
    # (add an address, unsuppress one)
    "marketing": [
        "view_customer",
        "change_customer",
        "view_cart",
        "view_payment",
        "view_event",
        "view_suppression",
        "add_suppression",
        "delete_suppression",
    ],
    "journeys": [
        # a journey is deactivated, never deleted: its sends and enrolments are the record of
        # what was promised and sent, and outlive it
        "add_journey",
        "change_journey",
        "view_journey",
        *(f"{action}_journeystep" for action in ("add", "change", "delete", "view")),
        "view_enrollment",
        "view_scheduledsend",
        "change_scheduledsend",
        # the site's frequency caps: added, edited and switched off (not deleted)
        "add_frequencycap",
        "change_frequencycap",
        "view_frequencycap",
        # discount codes: pools are created and filled (CSV upload) by marketers; handed-out
        # codes and redemptions are records, only read
        "add_discountcodepool",
        "change_discountcodepool",
        "view_discountcodepool",
        "view_pooledcode",
        "delete_pooledcode",
        "view_coderedemption",
        "check_discount_code",
        "view_conversion",
    ],
    "media_tasks": [
        "add_uploadedimage",
        "view_uploadedimage",
        "change_uploadedimage",
        "view_imagevariant",
    ],
    "django_q": ["view_task", "view_failure", "view_schedule"],
}


@transaction.atomic
def marketer_group_sync() -> Group:
    """Create the Marketer group and give it exactly the MARKETER_PERMISSIONS that exist."""
    group, _ = Group.objects.get_or_create(name=MARKETER_GROUP)
    wanted = Q(pk__in=[])
    for app_label, codenames in MARKETER_PERMISSIONS.items():
        wanted |= Q(content_type__app_label=app_label, codename__in=codenames)
    permissions = list(Permission.objects.filter(wanted))
    if {p.pk for p in permissions} != set(group.permissions.values_list("pk", flat=True)):
        group.permissions.set(permissions)
    return group


@transaction.atomic
def marketer_user_ensure(*, username: str, password: str | None, email: str = "") -> User:
    """A staff login in the Marketer group; `password` None keeps the current one (a new user
    without one cannot log in until it is set)."""
    group = marketer_group_sync()
    user, created = User.objects.get_or_create(
        username=username, defaults={"email": email, "is_staff": True}
    )
    if not user.is_staff or not user.is_active:
        user.is_staff = user.is_active = True
        user.save(update_fields=["is_staff", "is_active"])
    if password is not None and not user.check_password(password):
        user.set_password(password)
        user.save(update_fields=["password"])
    elif created:
        user.set_unusable_password()
        user.save(update_fields=["password"])
    user.groups.add(group)
    return user
