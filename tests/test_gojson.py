"""
Tests for L{replayforge.gojson}: JSON and times as Go's standard library
wrote them.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from twisted.trial.unittest import SynchronousTestCase

from replayforge.gojson import dumps, go_float, rfc3339_nano


class DumpsTests(SynchronousTestCase):
    """L{dumps} writes what Go's C{json.Marshal} writes."""

    def test_sorted_keys_no_spaces(self) -> None:
        """Mapping keys are sorted, nested ones too; no space anywhere."""
        self.assertEqual(
            dumps({"b": 1, "a": {"z": [True, None], "y": "x"}}),
            '{"a":{"y":"x","z":[true,null]},"b":1}',
        )

    def test_html_characters_escaped(self) -> None:
        """C{<}, C{>}, C{&}, U+2028 and U+2029 are escaped; other text is not."""
        self.assertEqual(
            dumps({"t": '<a & b>\u2028\u2029é"\n'}),
            '{"t":"\\u003ca \\u0026 b\\u003e\\u2028\\u2029é\\"\\n"}',
        )

    def test_floats(self) -> None:
        """
        Whole floats have no fraction; small ones no exponent down to 1e-6;
        the others as Go's shortest form.
        """
        self.assertEqual(
            dumps([5.0, 0.5, 1.5e-05, 1e-07, 1e21, 2.0**60, -(2.0**53) - 2]),
            "[5,0.5,0.000015,1e-07,1e+21,1152921504606847000,-9007199254740994]",
        )

    def test_non_finite_refused(self) -> None:
        """NaN cannot be written, as in Go."""
        self.assertRaises(ValueError, go_float, float("nan"))

    def test_non_text_keys(self) -> None:
        """Keys that are not text are written as text, sorted as text."""
        self.assertEqual(dumps({10: "a", 9: "b"}), '{"10":"a","9":"b"}')

    def test_unknown_type_refused(self) -> None:
        """A value JSON cannot hold is an error, not a silent string."""
        self.assertRaises(TypeError, dumps, {"when": datetime.now(UTC)})


class RFC3339NanoTests(SynchronousTestCase):
    """L{rfc3339_nano} formats times as Go's C{time.RFC3339Nano}."""

    def test_fraction_trimmed(self) -> None:
        """Trailing zeros of the fraction are dropped; none when whole."""
        moment = datetime(2024, 12, 10, 17, 14, 51, 120000, tzinfo=UTC)
        self.assertEqual(rfc3339_nano(moment), "2024-12-10T17:14:51.12Z")
        self.assertEqual(
            rfc3339_nano(moment.replace(microsecond=0)), "2024-12-10T17:14:51Z"
        )

    def test_offset(self) -> None:
        """A zone other than UTC is written as its offset."""
        zone = timezone(-timedelta(hours=5, minutes=30))
        moment = datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=zone)
        self.assertEqual(rfc3339_nano(moment), "2024-01-02T03:04:05.000006-05:30")
