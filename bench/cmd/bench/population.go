package main

import (
	"context"
	"fmt"
	"time"

	"gongji/money"
	"gongji/region"
	"gongji/sharing"
	"gongji/sim"
)

// benchRel is an ACTIVE relationship with quota, ready to spend from.
type benchRel struct {
	id        string
	benRegion string // the beneficiary's pooling region (where the cost is paid)
}

// makeRelationships creates n ACTIVE relationships through the domain
// services, as the provinces' own systems would: both people registered at
// their nodes, the sharer's account credited, a proposal (by the sharer for
// a local relationship, by the beneficiary through the clearing switch for a
// cross-province one), consent by the other party, and quota earmarked. Each
// sharer gets funding for quota; first names this batch of people (ID
// numbers must be unique per node).
func makeRelationships(ctx context.Context, sharerNode, benNode *provinceNode, n, first int, quota money.Yuan) ([]benchRel, error) {
	sp, err := region.ParseProvince(sharerNode.code)
	if err != nil {
		return nil, err
	}
	bp, err := region.ParseProvince(benNode.code)
	if err != nil {
		return nil, err
	}
	cross := sharerNode != benNode
	rels := make([]benchRel, n)
	base := time.Date(1950, time.January, 1, 0, 0, 0, 0, time.UTC)
	id := func(reg string, k int) string {
		d := base.AddDate(0, 0, k/500) // 500 people per birth date
		return sim.MakeID(reg, d.Year(), int(d.Month()), d.Day(), k%500)
	}
	enroll := func(reg string) sharing.Enrollment {
		return sharing.Enrollment{Region: reg, Scheme: sharing.SchemeEmployee, Mode: sharing.ModePooledWithAccount,
			Status: sharing.PersonActive, Insured: true}
	}
	err = parallel(ctx, n, 8, func(ctx context.Context, i int) error {
		k := first + i
		sReg := sp.Regions[k%len(sp.Regions)].Code
		bReg := bp.Regions[(k/3)%len(bp.Regions)].Code
		s, err := sharerNode.svc.RegisterPerson(ctx, sharing.RegisterPersonRequest{IDNumber: id(sReg, 2*k), Enrollment: enroll(sReg)})
		if err != nil {
			return fmt.Errorf("register sharer %d: %w", k, err)
		}
		b, err := benNode.svc.RegisterPerson(ctx, sharing.RegisterPersonRequest{IDNumber: id(bReg, 2*k+1), Enrollment: enroll(bReg)})
		if err != nil {
			return fmt.Errorf("register beneficiary %d: %w", k, err)
		}
		if _, err := sharerNode.svc.Credit(ctx, sharing.MovementRequest{Key: fmt.Sprintf("fund-%d", k),
			PersonRef: s.Person.Ref, Amount: quota}); err != nil {
			return fmt.Errorf("credit %d: %w", k, err)
		}
		p := sharing.Proposal{Key: fmt.Sprintf("prop-%d", k), SharerRef: s.Person.Ref, SharerProvince: sp.Code,
			BeneficiaryRef: b.Person.Ref, BeneficiaryProvince: bp.Code, Relation: sharing.RelationParent}
		var rel sharing.Relationship
		consentBy := sharing.SideBeneficiary
		if cross {
			p.By, consentBy = sharing.SideBeneficiary, sharing.SideSharer
			rel, err = benNode.svc.Propose(ctx, p)
		} else {
			p.By = sharing.SideSharer
			rel, err = sharerNode.svc.Propose(ctx, p)
		}
		if err != nil {
			return fmt.Errorf("propose %d: %w", k, err)
		}
		if _, err := sharerNode.svc.Consent(ctx, sharing.CommandRequest{Key: fmt.Sprintf("consent-%d", k),
			RelationshipID: rel.ID, By: consentBy}); err != nil {
			return fmt.Errorf("consent %d: %w", k, err)
		}
		if _, err := sharerNode.svc.SetQuota(ctx, sharing.SetQuotaRequest{Key: fmt.Sprintf("quota-%d", k),
			RelationshipID: rel.ID, Quota: quota}); err != nil {
			return fmt.Errorf("quota %d: %w", k, err)
		}
		rels[i] = benchRel{id: rel.ID, benRegion: bReg}
		return nil
	})
	return rels, err
}
