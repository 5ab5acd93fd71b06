{{/* The chart's name. */}}
{{- define "card-registrar.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The objects' base name: the release name when it already says card-registrar. */}}
{{- define "card-registrar.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "card-registrar.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "card-registrar.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "card-registrar.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Selector labels of one component (worker, dispatch, migrate): ctx = (dict "root" $ "component" "worker"). */}}
{{- define "card-registrar.selectorLabels" -}}
app.kubernetes.io/name: {{ include "card-registrar.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Every object's labels: ctx as for selectorLabels. */}}
{{- define "card-registrar.labels" -}}
{{ include "card-registrar.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "card-registrar.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/*
One worker pod template. ctx = (dict "root" $ "component" "worker" "env" (dict NAME value ...)
"resources" {...} "grace" 40).
*/}}
{{- define "card-registrar.podTemplate" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
metadata:
  labels:
    {{- include "card-registrar.labels" . | nindent 4 }}
    # The pods that serve the admin port (the Service selects these, not the migrate Job's pod).
    card-registrar/admin: "true"
  annotations:
    # A settings change rolls the pods.
    checksum/config: {{ include (print $root.Template.BasePath "/configmap.yaml") $root | sha256sum }}
    prometheus.io/scrape: "true"
    prometheus.io/port: {{ $v.adminPort | quote }}
    prometheus.io/path: /metrics
    {{- with $v.worker.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "card-registrar.serviceAccountName" $root }}
  automountServiceAccountToken: {{ $v.serviceAccount.automountToken }}
  {{- with $v.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  terminationGracePeriodSeconds: {{ .grace }}
  securityContext:
    {{- toYaml $v.podSecurityContext | nindent 4 }}
  topologySpreadConstraints:
    - maxSkew: 1
      topologyKey: topology.kubernetes.io/zone
      whenUnsatisfiable: ScheduleAnyway
      labelSelector:
        matchLabels:
          {{- include "card-registrar.selectorLabels" . | nindent 10 }}
  {{- with $v.worker.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.worker.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.worker.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  containers:
    - name: card-registrar
      image: {{ include "card-registrar.image" $root }}
      imagePullPolicy: {{ $v.image.pullPolicy }}
      args: ["run"]
      ports:
        - name: admin
          containerPort: {{ $v.adminPort }}
          protocol: TCP
      envFrom:
        - configMapRef:
            name: {{ include "card-registrar.fullname" $root }}
      # `env` wins over `envFrom` for the same name.
      env:
        {{- range $name, $value := .env }}
        - name: {{ $name }}
          value: {{ $value | quote }}
        {{- end }}
        - name: DATABASE_URL
          valueFrom:
            secretKeyRef:
              name: {{ $v.secrets.database.name }}
              key: {{ $v.secrets.database.key }}
        {{- range $v.secrets.extraEnv }}
        - name: {{ .name }}
          valueFrom:
            secretKeyRef:
              name: {{ .secretName }}
              key: {{ .key }}
        {{- end }}
      volumeMounts:
        - name: keys
          mountPath: {{ $v.secrets.keys.mountPath }}
          readOnly: true
        {{- range $v.secrets.extraFiles }}
        - name: {{ .name }}
          mountPath: {{ .mountPath }}
          readOnly: true
        {{- end }}
        - name: tmp
          mountPath: /tmp
      startupProbe:
        httpGet:
          path: /healthz
          port: admin
        {{- toYaml $v.probes.startup | nindent 8 }}
      livenessProbe:
        httpGet:
          path: /healthz
          port: admin
        {{- toYaml $v.probes.liveness | nindent 8 }}
      readinessProbe:
        httpGet:
          path: /readyz
          port: admin
        {{- toYaml $v.probes.readiness | nindent 8 }}
      resources:
        {{- toYaml .resources | nindent 8 }}
      securityContext:
        {{- toYaml $v.securityContext | nindent 8 }}
  volumes:
    - name: keys
      secret:
        secretName: {{ $v.secrets.keys.name }}
        # Readable by the group fsGroup sets (10001), by no one else.
        defaultMode: 288 # 0440 in octal; decimal, as YAML 1.1 and 1.2 readers disagree on 0440
    {{- range $v.secrets.extraFiles }}
    - name: {{ .name }}
      secret:
        secretName: {{ .secretName }}
        defaultMode: 288 # 0440 in octal; decimal, as YAML 1.1 and 1.2 readers disagree on 0440
    {{- end }}
    - name: tmp
      emptyDir:
        sizeLimit: 16Mi
{{- end -}}

{{/* The env every worker pod gets beyond the ConfigMap (component-specific entries are merged in). */}}
{{- define "card-registrar.baseEnv" -}}
{{- if .Values.migrations.job.enabled -}}
{{ toYaml .Values.migrations.workerEnv }}
{{- else -}}
{}
{{- end -}}
{{- end -}}
