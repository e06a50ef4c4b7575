package provincedb_test

import (
	"context"
	"maps"
	"testing"

	"gongji/sharing"
)

// TestEnrollmentChangeKey: a change with a key stores its answer; a retry
// with the same key gets the first answer even after later changes moved the
// person on, and the key reused for a different change is refused with
// nothing written.
func TestEnrollmentChangeKey(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	clk := newClock()
	n := newNode(t, "410000", clk, nil)
	sharer := n.register(t, employee(regionOf("410000")))
	ben := n.register(t, employee(regionOf("410000")))
	n.credit(t, sharer, "500.00")
	rel := n.activeRel(t, sharer, ben, "200.00")

	suspend := sharing.EnrollmentChange{PersonRef: ben, Event: sharing.ReasonSuspension, Key: key("enr")}
	first, err := n.svc.UpdateEnrollment(ctx, suspend)
	if err != nil {
		t.Fatal(err)
	}
	if first.Replayed || len(first.Dissolved) != 1 || first.Dissolved[0].ID != rel.ID {
		t.Fatalf("first answer: replayed=%v dissolved=%v", first.Replayed, first.Dissolved)
	}
	// Reactivated under another key: the person has moved on.
	if _, err := n.svc.UpdateEnrollment(ctx, sharing.EnrollmentChange{PersonRef: ben,
		Enrollment: employee(first.Person.Region), Key: key("enr")}); err != nil {
		t.Fatal(err)
	}
	again, err := n.svc.UpdateEnrollment(ctx, suspend)
	if err != nil {
		t.Fatal(err)
	}
	if !again.Replayed || again.Person.Status != first.Person.Status || again.Person.Version != first.Person.Version ||
		len(again.Dissolved) != 1 || again.Dissolved[0].ID != rel.ID {
		t.Fatalf("retry: replayed=%v person %s v%d dissolved %v; want the first answer (%s v%d)",
			again.Replayed, again.Person.Status, again.Person.Version, again.Dissolved, first.Person.Status, first.Person.Version)
	}
	if p, err := n.svc.GetPerson(ctx, ben); err != nil || p.Status != sharing.PersonActive {
		t.Fatalf("the replay changed the person: %v %v", p.Status, err)
	}

	before := snapshot(t, n)
	_, err = n.svc.UpdateEnrollment(ctx, sharing.EnrollmentChange{PersonRef: ben, Event: sharing.ReasonDeath, Key: suspend.Key})
	wantErr(t, "same key, other change", err, sharing.ErrKeyReused)
	if after := snapshot(t, n); !maps.Equal(after, before) {
		t.Fatalf("a refused key reuse wrote to the database")
	}
	n.conserved(t)
}
