package clock

import (
	"testing"
	"time"
)

func TestNew(t *testing.T) {
	c, err := New("")
	if err != nil || c().Sub(time.Now()).Abs() > time.Minute {
		t.Fatalf("real clock: %v", err)
	}
	c, err = New("2026-11-01T01:00:00+08:00")
	if err != nil {
		t.Fatal(err)
	}
	want := time.Date(2026, 10, 31, 17, 0, 0, 0, time.UTC)
	if got := c(); got.Before(want) || got.Sub(want) > time.Minute {
		t.Fatalf("clock = %s, want just after %s", got, want)
	}
	if _, err := New("yesterday"); err == nil {
		t.Fatal("want an error for a bad start")
	}
}

func TestNewFrozen(t *testing.T) {
	c, err := NewFrozen("2026-11-06T01:00:00+08:00")
	if err != nil || !c().Equal(c()) || c().UTC().Format(time.RFC3339) != "2026-11-05T17:00:00Z" {
		t.Fatalf("frozen clock: %v %v", c, err)
	}
	if _, err := NewFrozen(""); err == nil {
		t.Fatal("want an error for an empty start")
	}
}
