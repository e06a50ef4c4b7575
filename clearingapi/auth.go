// Package clearingapi holds the gRPC servers of the national clearing service:
// the switch, the reporting stream, statements and the operators' admin
// service. Handlers map proto to domain and domain errors to status codes;
// the rules live in settlement/, prepay/ and the clearingdb adapter.
//
// Authorisation: the caller's identity comes only from its verified client
// certificate (internal/tlsconf). A province node may act only as its own
// province and read only its own data; AdminService needs an operator
// certificate. Every method checks this before it reads or writes anything.
package clearingapi

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"gongji/internal/tlsconf"
)

// caller returns the verified identity of the peer, or Unauthenticated.
func caller(ctx context.Context) (tlsconf.Identity, error) {
	id, err := tlsconf.IdentityFromContext(ctx)
	if err != nil {
		return tlsconf.Identity{}, status.Error(codes.Unauthenticated, "a verified gongji client certificate is required")
	}
	return id, nil
}

// callerProvince returns the province of a province-node caller; any other
// identity is PermissionDenied.
func callerProvince(ctx context.Context) (string, error) {
	id, err := caller(ctx)
	if err != nil {
		return "", err
	}
	if id.Kind != tlsconf.Province {
		return "", status.Errorf(codes.PermissionDenied, "%s may not call this method: province nodes only", id)
	}
	return id.Province, nil
}

// requireProvince checks that the caller is the node of province code.
func requireProvince(ctx context.Context, code string) error {
	p, err := callerProvince(ctx)
	if err != nil {
		return err
	}
	if p != code {
		return status.Errorf(codes.PermissionDenied, "province %s may not act for province %s", p, safeCode(code))
	}
	return nil
}

// requireOperator checks that the caller holds an operator certificate.
func requireOperator(ctx context.Context) error {
	id, err := caller(ctx)
	if err != nil {
		return err
	}
	if id.Kind != tlsconf.Operator {
		return status.Errorf(codes.PermissionDenied, "%s may not call this method: operators only", id)
	}
	return nil
}
