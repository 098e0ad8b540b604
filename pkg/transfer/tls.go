package transfer

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
)

// Credentials names a node's PEM files: the CA that signs every Berth node's
// certificate, and this node's certificate and key. One certificate serves both
// ends, so it carries both extended key usages (server and client auth) and the
// node's name as a DNS subject alternative name, which clients check.
type Credentials struct {
	CAFile, CertFile, KeyFile string
}

// ServerTLS is the server side of mutual TLS from c: TLS 1.3 only, a client
// certificate required and verified against the CA.
func ServerTLS(c Credentials) (*tls.Config, error) {
	pool, cert, err := c.load()
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		ClientCAs:    pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
	}, nil
}

// ClientTLS is the client side of mutual TLS from c, for a server whose
// certificate names serverName (its node name): TLS 1.3 only, this node's
// certificate presented, the server's verified against the CA and that name.
func ClientTLS(c Credentials, serverName string) (*tls.Config, error) {
	if serverName == "" {
		return nil, errors.New("transfer client TLS: the server's name is required")
	}
	pool, cert, err := c.load()
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		RootCAs:      pool,
		ServerName:   serverName,
	}, nil
}

func (c Credentials) load() (*x509.CertPool, tls.Certificate, error) {
	ca, err := os.ReadFile(c.CAFile)
	if err != nil {
		return nil, tls.Certificate{}, fmt.Errorf("transfer CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		return nil, tls.Certificate{}, fmt.Errorf("transfer CA %s: no PEM certificate in it", c.CAFile)
	}
	cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
	if err != nil {
		return nil, tls.Certificate{}, fmt.Errorf("transfer certificate: %w", err)
	}
	return pool, cert, nil
}

// serverConfig checks that cfg asks for mutual TLS (a server that would take
// anonymous clients is a configuration error, not a mode) and returns a copy
// held to TLS 1.3.
func serverConfig(cfg *tls.Config) (*tls.Config, error) {
	if cfg == nil {
		return nil, errors.New("transfer server: a TLS configuration is required")
	}
	if cfg.ClientAuth != tls.RequireAndVerifyClientCert || (cfg.ClientCAs == nil && cfg.GetConfigForClient == nil) {
		return nil, errors.New("transfer server: the TLS configuration must require and verify client certificates against a CA")
	}
	if len(cfg.Certificates) == 0 && cfg.GetCertificate == nil && cfg.GetConfigForClient == nil {
		return nil, errors.New("transfer server: the TLS configuration has no certificate")
	}
	c := cfg.Clone()
	c.MinVersion = tls.VersionTLS13
	return c, nil
}
