"""Events shaped exactly as Judo's SDKs send them, built field by field from their sources.

iOS (judoapp/judo-ios): Sources/JudoSDK/Events.swift (EventPayload.encode, EventContext),
Judo.swift (the screen properties), Analytics.swift (JSONEncoder, .iso8601 dates).
Android (judoapp/judo-android): sdk/.../api/analytics/AnalyticsEvent.kt (Screen, Identify,
Register, Context), core/implementations/AnalyticsServiceImpl.kt (SimpleDateFormat
"yyyy-MM-dd'T'HH:mm:ssZ" in the default locale).
"""

import datetime
import uuid


def ios_timestamp(moment):
    # JSONEncoder.DateEncodingStrategy.iso8601: UTC, whole seconds, "Z".
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def android_timestamp(moment, offset_hours=-4):
    # SimpleDateFormat's "Z": local time and an offset with no colon, such as -0400.
    local = moment.astimezone(datetime.timezone(datetime.timedelta(hours=offset_hours)))
    return local.strftime("%Y-%m-%dT%H:%M:%S%z")


class Device:
    """What both SDKs share: a screen view's properties (in each SDK's own key order) and an
    identify, which also sets the userID sent from then on."""

    PROPERTIES = ()  # the screen properties' keys, in the order the SDK writes them
    SCREEN_DEFAULTS = {}

    def screen(self, moment, experience_id, **given):
        values = {**self.SCREEN_DEFAULTS, **given, "experienceID": str(experience_id)}
        return self._event("screen", moment,
                           properties={key: values[key] for key in self.PROPERTIES})

    def identify(self, moment, user_id, traits):
        self.user_id = user_id
        return self._event("identify", moment, traits=traits)


class IosDevice(Device):
    """One app install on iOS: EventPayload's fields. userID is omitted when nil
    (encodeIfPresent); traits and properties are JSON objects."""

    PROPERTIES = ("id", "name", "experienceID", "experienceRevisionID", "experienceName")
    SCREEN_DEFAULTS = {"id": "a1b2c3", "name": "Screen", "experienceName": "Welcome",
                       "experienceRevisionID": "5f1e"}

    def __init__(self, user_id=None, locale="en-CA"):
        self.anonymous_id = str(uuid.uuid4()).upper()
        self.user_id = user_id
        self.context = {
            "device": {"id": str(uuid.uuid4()).upper(), "buildEnvironment": "PRODUCTION"},
            "os": {"name": "iOS", "version": "17.2"},
            "locale": locale,
        }

    def _event(self, kind, moment, **fields):
        event = {"id": str(uuid.uuid4()).upper(), "timestamp": ios_timestamp(moment),
                 "anonymousID": self.anonymous_id}
        if self.user_id is not None:
            event["userID"] = self.user_id
        event["type"] = kind
        event.update(fields)
        event["context"] = self.context
        return event


class AndroidDevice(Device):
    """One app install on Android: Moshi writes null for a null userID and token."""

    PROPERTIES = ("id", "name", "experienceID", "experienceName", "experienceRevisionID")
    SCREEN_DEFAULTS = {"id": "node-7", "name": "Écran d'accueil", "experienceName": "Bienvenue",
                       "experienceRevisionID": "rev-3"}

    def __init__(self, user_id=None, locale="fr-CA", offset_hours=-4):
        self.anonymous_id = str(uuid.uuid4())
        self.user_id = user_id
        self.offset_hours = offset_hours
        self.context = {
            "device": {"id": str(uuid.uuid4()), "token": None},
            "locale": locale,
            "os": {"name": "Android", "version": "14"},
        }

    def _event(self, kind, moment, **fields):
        return {"id": str(uuid.uuid4()), "anonymousID": self.anonymous_id,
                "userID": self.user_id,
                "timestamp": android_timestamp(moment, self.offset_hours),
                "context": self.context, **fields, "type": kind}

    def register(self, moment, token="fcm-token-1"):
        self.context = {**self.context, "device": {**self.context["device"], "token": token}}
        return self._event("register", moment)


def mixed_batch(moment, size=100, experiences=(7, 8, 9)):
    """`size` events from both platforms: screen views, identifies and a register, with
    null userIDs and non-ASCII names. Returns (events, screen views per experience)."""
    ios, android = IosDevice(), AndroidDevice()
    events, expected = [], {}
    for number in range(size):
        device = ios if number % 2 else android
        if number == 10:
            events.append(ios.identify(moment, "user-42", {"name": "Zoë", "plan": "pro"}))
        elif number == 11:
            events.append(android.identify(moment, "user-43", {"名前": "花子"}))
        elif number == 12:
            events.append(android.register(moment))
        else:
            experience = experiences[number % len(experiences)]
            events.append(device.screen(moment, experience, id=f"s{number % 5}"))
            expected[experience] = expected.get(experience, 0) + 1
    return events, expected
