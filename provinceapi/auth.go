package provinceapi

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"gongji/internal/tlsconf"
)

// caller returns the verified identity of the peer, or Unauthenticated. The
// identity comes only from the client certificate the TLS layer verified
// (docs/architecture.md, "Identity and personal data"); nothing the request
// says about its sender is trusted.
func caller(ctx context.Context) (tlsconf.Identity, error) {
	id, err := tlsconf.IdentityFromContext(ctx)
	if err != nil {
		return tlsconf.Identity{}, status.Error(codes.Unauthenticated, "a verified gongji client certificate is required")
	}
	return id, nil
}

// requireOwnProvince admits only this province's own systems: ProvinceService
// is called by the province's enrollment, premium, hospital and pharmacy
// systems, which present the province's certificate. Another province, the
// clearing service and operators get PermissionDenied: they reach a node's
// data only through PeerService, where the authority rules apply.
func requireOwnProvince(ctx context.Context, own string) error {
	id, err := caller(ctx)
	if err != nil {
		return err
	}
	if id.Kind != tlsconf.Province || id.Province != own {
		return status.Errorf(codes.PermissionDenied, "%s may not call the ProvinceService of %s: this province's own certificate only", id, own)
	}
	return nil
}

// requireClearing admits only the national clearing service: PeerService
// carries other provinces' requests, and only the switch (which checked that
// each caller acts for itself) may deliver them.
func requireClearing(ctx context.Context) error {
	id, err := caller(ctx)
	if err != nil {
		return err
	}
	if id.Kind != tlsconf.Clearing {
		return status.Errorf(codes.PermissionDenied, "%s may not call PeerService: the clearing service only", id)
	}
	return nil
}

// CallerName names the caller of a request for the per-call log line of
// serve.GRPCOptions: its certificate identity ("gongji:province:410000"), or
// "unauthenticated".
func CallerName(ctx context.Context) string {
	id, err := tlsconf.IdentityFromContext(ctx)
	if err != nil {
		return "unauthenticated"
	}
	return id.String()
}
