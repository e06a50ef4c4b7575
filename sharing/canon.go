package sharing

import (
	"bytes"
	"crypto/sha256"
	"strconv"
	"time"
)

// hashFields is the request hash of R11: sha256 over the netstrings
// ("<len>:<bytes>,") of a versioned tag followed by the request's fields in a
// fixed order. Length prefixes make the encoding unambiguous whatever the
// fields contain; the tag keeps hashes of different request types apart.
func hashFields(tag string, fields ...string) []byte {
	var b bytes.Buffer
	ns := func(s string) {
		b.WriteString(strconv.Itoa(len(s)))
		b.WriteByte(':')
		b.WriteString(s)
		b.WriteByte(',')
	}
	ns(tag)
	for _, f := range fields {
		ns(f)
	}
	sum := sha256.Sum256(b.Bytes())
	return sum[:]
}

// stamp is the canonical text of an instant: UTC, microseconds.
func stamp(t time.Time) string { return Timestamp(t).Format("2006-01-02T15:04:05.000000Z") }

// Hash is the request hash of a proposal (see hashFields). Origin is part of
// it: the same key from two provinces is two proposals.
func (p Proposal) Hash() []byte {
	return hashFields("gongji.sharing.proposal.v1", p.Origin, p.Key, string(p.By), p.SharerRef,
		p.SharerProvince, p.BeneficiaryRef, p.BeneficiaryProvince, string(p.Relation))
}

// Hash is the request hash of a relationship command.
func (c Command) Hash() []byte {
	return hashFields("gongji.sharing.command.v1", c.Origin, c.Key, string(c.Kind), c.RelationshipID,
		string(c.By), string(c.Reason), c.Quota.String())
}

// Hash is the request hash of a movement of the given entry kind.
func (m MovementRequest) Hash(kind string) []byte {
	return hashFields("gongji.sharing.movement.v1", kind, m.Key, m.PersonRef, m.Amount.String())
}

// Validate checks a movement request. Errors are *FieldError.
func (m MovementRequest) Validate() error {
	if err := validKey("key", m.Key); err != nil {
		return err
	}
	if err := validRef("person_ref", m.PersonRef); err != nil {
		return err
	}
	return validAmount("amount", m.Amount)
}
