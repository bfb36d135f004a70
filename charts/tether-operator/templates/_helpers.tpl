{{/* The release's full name, cut to the 63 characters a label value allows. */}}
{{- define "tether-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "tether-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "tether-operator.labels" -}}
{{ include "tether-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "tether-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "tether-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The namespace whose GitRepository objects are watched in namespace scope. */}}
{{- define "tether-operator.watchNamespace" -}}
{{- default .Release.Namespace .Values.watchNamespace -}}
{{- end -}}

{{- define "tether-operator.leaderElection" -}}
{{- if or .Values.leaderElection.enabled (gt (int .Values.replicas) 1) -}}true{{- end -}}
{{- end -}}

{{/* Fails early on values that cannot work. */}}
{{- define "tether-operator.validate" -}}
{{- if not (has .Values.scope (list "cluster" "namespace")) -}}
{{- fail (printf "scope must be cluster or namespace, not %q" .Values.scope) -}}
{{- end -}}
{{- if and .Values.ciAccess.enabled (not .Values.hub.url) -}}
{{- fail "ciAccess.enabled needs hub.url: CI requests reach the operator through the hub's tunnel" -}}
{{- end -}}
{{- if and .Values.ciAccess.enabled (not (or .Values.ciAccess.tokens .Values.ciAccess.oidc)) -}}
{{- fail "ciAccess.enabled needs at least one entry in ciAccess.tokens or ciAccess.oidc" -}}
{{- end -}}
{{- if and .Values.hub.reportStatus (not .Values.hub.url) -}}
{{- fail "hub.reportStatus needs hub.url: the status is reported to the hub" -}}
{{- end -}}
{{- if and .Values.hub.url (not .Values.hub.tokenSecret.name) -}}
{{- fail "hub.url needs hub.tokenSecret.name: the operator authenticates to the hub with that token" -}}
{{- end -}}
{{- end -}}

{{/*
The rules for applying and pruning the manifests of the repositories: rbac.applyRules, or everything.
*/}}
{{- define "tether-operator.applyRules" -}}
{{- if .Values.rbac.applyRules -}}
{{ toYaml .Values.rbac.applyRules }}
{{- else -}}
- apiGroups: ["*"]
  resources: ["*"]
  verbs: [get, list, watch, create, update, patch, delete]
{{- end -}}
{{- end -}}

{{/* The access file --ci-access reads: ciAccess without the chart's own keys. */}}
{{- define "tether-operator.ciAccessFile" -}}
{{- $file := dict "tokens" .Values.ciAccess.tokens -}}
{{- with .Values.ciAccess.oidc }}{{ $_ := set $file "oidc" . }}{{ end -}}
{{- with .Values.ciAccess.limits }}{{ $_ := set $file "limits" . }}{{ end -}}
{{ toYaml $file }}
{{- end -}}

{{/*
The users and groups CI access impersonates, as JSON {"users": [...], "groups": [...]}: the literal
names in tokens and OIDC rules (a name with a {claim} template cannot be listed), and
ciAccess.impersonate.
*/}}
{{- define "tether-operator.ciSubjects" -}}
{{- $users := list -}}
{{- $groups := list -}}
{{- range .Values.ciAccess.tokens -}}
{{- $users = append $users .user -}}
{{- range .groups }}{{ $groups = append $groups . }}{{ end -}}
{{- end -}}
{{- range .Values.ciAccess.oidc -}}
{{- range .rules -}}
{{- if and .user (not (contains "{" .user)) }}{{ $users = append $users .user }}{{ end -}}
{{- range .groups }}{{ if not (contains "{" .) }}{{ $groups = append $groups . }}{{ end }}{{ end -}}
{{- end -}}
{{- end -}}
{{- $users = concat $users .Values.ciAccess.impersonate.users | uniq | sortAlpha -}}
{{- $groups = concat $groups .Values.ciAccess.impersonate.groups | uniq | sortAlpha -}}
{{- dict "users" $users "groups" $groups | toJson -}}
{{- end -}}
